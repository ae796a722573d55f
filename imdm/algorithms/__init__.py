"""Algorithms, registered by name (registry.py, protocol.py): processes that sample and score data
(mdlm, imdm) and the training objectives built on them (nelbo, sdtt, redi)."""
