"""Guest-side suites and adapters: run inside the VM that ./dev vm boots (see specs/vm.md)."""
