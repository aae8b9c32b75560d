"""Multi-agent RL on environments: the MARL workload (flexmarl.marl.workload)."""
