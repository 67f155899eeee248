#!/usr/bin/env python3
"""Renders a kustomization offline (no kubectl here): the `resources` it lists (files or
directories holding a kustomization.yaml) and JSON 6902 `patches` with a kind/name target.
This is the subset deploy/kubernetes uses; anything else is an error, not silently ignored.

Usage: render.py DIR [OUT_DIR]  -- prints the documents, or writes OUT_DIR/NN-kind-name.yaml
"""
import copy
import os
import sys

import yaml


def render(directory):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    if unknown:
        raise SystemExit(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    documents = []
    for resource in kustomization.get("resources", []):
        path = os.path.join(directory, resource)
        if os.path.isdir(path):
            documents.extend(render(path))
        else:
            with open(path) as f:
                documents.extend(d for d in yaml.safe_load_all(f) if d)
    for patch in kustomization.get("patches", []):
        with open(os.path.join(directory, patch["path"])) as f:
            operations = yaml.safe_load(f)
        target = patch["target"]
        matched = [d for d in documents if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not matched:
            raise SystemExit(f"{directory}: patch {patch['path']} matches no {target}")
        for document in matched:
            for operation in operations:
                apply(document, operation)
    return documents


def apply(document, operation):
    op, path = operation["op"], operation["path"]
    if op not in ("add", "replace"):
        raise SystemExit(f"unsupported patch op {op}")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    node = document
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    value = copy.deepcopy(operation["value"])
    if isinstance(node, list):
        if last == "-":
            node.append(value)
        elif op == "add":
            node.insert(int(last), value)
        else:
            node[int(last)] = value
    else:
        if op == "replace" and last not in node:
            raise SystemExit(f"replace of missing {path}")
        node[last] = value


def main():
    directory = sys.argv[1]
    documents = render(directory)
    if len(sys.argv) > 2:
        out = sys.argv[2]
        os.makedirs(out, exist_ok=True)
        for i, document in enumerate(documents):
            name = f"{i:02d}-{document['kind'].lower()}-{document['metadata']['name']}.yaml"
            with open(os.path.join(out, name), "w") as f:
                yaml.safe_dump(document, f, sort_keys=False)
    else:
        yaml.safe_dump_all(documents, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
