from sposd.cli import main

main()
