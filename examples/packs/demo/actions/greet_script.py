import json
import sys

params = json.loads(sys.stdin.readline() or "{}")
print(json.dumps({"greeting": f"Hello, {params.get('name', 'World')}!"}))
