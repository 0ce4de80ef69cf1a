"""The host side of the boards: SSH and local transports, what is shipped, profiling, assignment, plan.json,
deploy and deployment.json (DESIGN §2, §7). Nothing here runs on a board; `edvit_tool.runtime` does."""
