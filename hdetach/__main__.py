from hdetach.cli import main

main()
