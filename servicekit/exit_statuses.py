"""The exit statuses of a service's programs, declared once.

client.py's command line (cli.py), the container probe (probe.py, which must
not import thriftpy2) and server.py's start-up (startup.py) exit with these.
"""

EXIT_INTERNAL, EXIT_USAGE, EXIT_INVALID, EXIT_CONFLICT, EXIT_UNAVAILABLE, EXIT_UNREACHABLE = 1, 2, 3, 5, 7, 8
EXIT_OTHER_DECLARED = 9  # an exception the IDL declares that exit_statuses gives no status of its own
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped
EXIT_TERMINATED = 143  # 128 + SIGTERM
