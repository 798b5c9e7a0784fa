from frip_engine.cli import main

main()
