from agentserver.cli import main

main()
