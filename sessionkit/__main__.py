from sessionkit.cli import main

main()
