import os


def run():
    return {"execution_id": os.environ["ATTUNE_EXEC_ID"]}
