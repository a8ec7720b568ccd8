# Smoke job: the guest sees the Hermes function (three BARs, MSI-X) and BAR0 matches `hermes info`.
part smoke python -m tests.vm.smoke "$BDF" /x/host-info.json
finish
