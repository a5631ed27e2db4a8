"""The small core every stage uses: params, paths, errors, atomic writes, the stage runner, devices, run info."""
