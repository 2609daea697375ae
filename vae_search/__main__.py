from vae_search.cli import main

main()
