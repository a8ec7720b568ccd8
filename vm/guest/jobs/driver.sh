# The driver-interface cases over /dev/hermes0 through the project's kernel driver.
part driver-over-devfile run_driver
finish
