def run(x, y):
    """Add two numbers"""
    return x + y
