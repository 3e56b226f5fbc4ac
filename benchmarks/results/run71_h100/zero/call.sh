# Kernel run 71, second call, same warm H100, commit bace35b:
#     LIMIT=570 bash benchmarks/next_device_call.sh zero
# The script as it ran: ../next_device_call_bace35b.sh.
