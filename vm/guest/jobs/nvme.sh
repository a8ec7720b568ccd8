# NVMe CP/SLM job (the host serves `hermes serve --device nvme-cp`): the guest's stock nvme driver
# binds the controller, nvme-cli shows it and drives a program by hand, and the library's
# behaviour suite runs over the passthrough backend (`nvme:/dev/ngXnY`).
part nvme-guest run_nvme
finish
