def run():
    import attune_build_probe
    import attune_index_dep

    return {"dep": attune_index_dep.__version__, "probe": attune_build_probe.RESULTS}
