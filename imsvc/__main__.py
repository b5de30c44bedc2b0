from imsvc.cli import main

main()
