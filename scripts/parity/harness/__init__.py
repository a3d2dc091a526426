"""The harness the commands stand on: one home per concept (where the API runs, load,
reports, throwaway services, images). Nothing here imports a command."""
