#!/usr/bin/env python3
"""Validates an SBOM written by amiforge with the formats' own tools.

    validate_sbom.py cyclonedx FILE SCHEMA_DIR   (jsonschema against the official schema)
    validate_sbom.py spdx FILE                   (spdx-tools' parser and validator)

Prints each problem and exits 1 if there is any."""
import json
import os
import sys


def cyclonedx(path, schema_dir):
    import jsonschema
    from referencing import Registry, Resource

    def load(name):
        with open(os.path.join(schema_dir, name)) as f:
            return json.load(f)

    bom = load("bom-1.6.schema.json")
    registry = Registry()
    for name in ("bom-1.6.schema.json", "spdx.schema.json", "jsf-0.82.schema.json"):
        schema = load(name)
        resource = Resource.from_contents(schema)
        registry = registry.with_resource(schema["$id"], resource)
    validator = jsonschema.Draft7Validator(
        bom, registry=registry, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    with open(path) as f:
        doc = json.load(f)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def spdx(path):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    doc = parse_file(path)
    return [f"{m.context}: {m.validation_message}" for m in validate_full_spdx_document(doc)]


def main():
    kind, path = sys.argv[1], sys.argv[2]
    problems = cyclonedx(path, sys.argv[3]) if kind == "cyclonedx" else spdx(path)
    for p in problems[:50]:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
