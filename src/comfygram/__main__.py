from comfygram.cli import main

main()
