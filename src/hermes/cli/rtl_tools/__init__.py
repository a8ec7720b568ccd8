"""Tools around the RTL that ``hermes rtl`` runs: synthesis estimates, Verilog simulation, CPI.

They sit beside the CLI, not in ``hermes.rtl``, which holds the hardware only.
"""
