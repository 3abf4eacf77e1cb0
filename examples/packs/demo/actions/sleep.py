import time


def run(seconds=30):
    """Sleep, then report how long"""
    time.sleep(seconds)
    return {"slept": seconds}
