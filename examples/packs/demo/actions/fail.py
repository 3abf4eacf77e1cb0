def run(message="boom"):
    """Always fail, with the given message"""
    raise RuntimeError(message)
