# Strict-mode validation of real answers against the documented schemas of
# GET /api/ops/openapi.json (control/tests/openapi.rs, tests/openapi_e2e.rs).
# Input: {"components": <the document's components>, "cases": [{"name",
# "schema", "instance"}]}. Every object schema gets unevaluatedProperties:
# false, so an answer member its schema does not list fails, as do a wrong
# type and a missing required member. Prints "ok N" or the failures (exit 1).
import json, sys
from openapi_schema_validator import OAS31Validator
data = json.load(open(sys.argv[1]))
components = data["components"]
in_allof = set()
def mark(node):
    if isinstance(node, dict):
        for part in node.get("allOf", []):
            ref = part.get("$ref", "") if isinstance(part, dict) else ""
            if ref:
                in_allof.add(ref.rsplit("/", 1)[-1])
        for v in node.values():
            mark(v)
    elif isinstance(node, list):
        for v in node:
            mark(v)
mark(components)
def strict(node, allof_member=False, name=None):
    if isinstance(node, dict):
        if "allOf" in node:
            node.setdefault("unevaluatedProperties", False)
            for part in node["allOf"]:
                strict(part, True)
        elif "properties" in node and not allof_member and name not in in_allof:
            node.setdefault("unevaluatedProperties", False)
        for k, v in node.items():
            if k != "allOf":
                strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
for n, s in components["schemas"].items():
    strict(s, name=n)
failures = []
for case in data["cases"]:
    root = dict(case["schema"])
    strict(root)
    root["components"] = components
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in OAS31Validator(root).iter_errors(case["instance"])]
    if errors:
        failures.append(case["name"] + ":\n  " + "\n  ".join(errors[:5]))
print("\n".join(failures) if failures else f"ok {len(data['cases'])}")
sys.exit(1 if failures else 0)
