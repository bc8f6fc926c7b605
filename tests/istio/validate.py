"""Validates `meshroot istio config` output against Istio's and Kyma's own schemas.

usage: validate.py FORMAT FILE
  FORMAT: mesh-config | helm-values | istio-operator | kyma | policies
  FILE:   the command's output for that format (JSON documents, `---` between them)

The schemas are kept in tests/istio/schemas (SOURCES.md names the commits):
- meshConfig, Helm values and AuthorizationPolicy specs are parsed with protobuf's JSON mapping
  into Istio's API messages (istio/api's protos, istio/istio's values_types.proto), compiled here
  with grpcio-tools' protoc. An unknown field or a wrong type is an error.
- Custom resources (AuthorizationPolicy, Kyma's Istio) are checked against their CRD's
  openAPIV3Schema with jsonschema, and, as an API server with strict field validation does,
  every field must be one the schema declares.
Prints one line per document; exits 1 on the first invalid one.
"""

import importlib
import json
import os
import sys
import tempfile

import jsonschema
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "schemas")

PROTOS = {
    os.path.join(SCHEMAS, "istio-api"): [
        "mesh/v1alpha1/config.proto",
        "security/v1beta1/authorization_policy.proto",
    ],
    os.path.join(SCHEMAS, "istio"): ["values_types.proto"],
}


def message_classes():
    """Compiles the kept protos into one descriptor pool; returns a lookup by full name."""
    well_known = os.path.join(os.path.dirname(importlib.import_module("grpc_tools").__file__), "_proto")
    pool = descriptor_pool.DescriptorPool()
    seen = set()
    with tempfile.TemporaryDirectory() as out:
        for root, files in PROTOS.items():
            target = os.path.join(out, "set.pb")
            code = protoc.main(
                ["protoc", f"-I{root}", f"-I{well_known}", "--include_imports", f"--descriptor_set_out={target}"]
                + files
            )
            if code != 0:
                sys.exit(f"protoc failed on {files}")
            descriptor_set = descriptor_pb2.FileDescriptorSet()
            with open(target, "rb") as handle:
                descriptor_set.ParseFromString(handle.read())
            for file in descriptor_set.file:
                if file.name not in seen:
                    seen.add(file.name)
                    pool.Add(file)
    return lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def parse_as(lookup, name, document, where):
    try:
        json_format.ParseDict(document, lookup(name)(), ignore_unknown_fields=False)
    except json_format.ParseError as error:
        fail(f"{where}: not a valid {name}: {error}")


def crd_schema(path, version):
    with open(path) as handle:
        crd = yaml.safe_load(handle)
    for served in crd["spec"]["versions"]:
        if served["name"] == version and served.get("served"):
            return crd["spec"]["group"], crd["spec"]["names"]["kind"], served["schema"]["openAPIV3Schema"]
    fail(f"{path}: no served version {version}")


def declared_fields(schema, value, where):
    """Every object key must be declared (or the schema must keep unknown fields)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            if where == "$" and key in ("apiVersion", "kind", "metadata"):
                continue  # the API server's own fields, not the CRD's
            if properties is not None and key in properties:
                declared_fields(properties[key], child, f"{where}.{key}")
            elif isinstance(additional, dict):
                declared_fields(additional, child, f"{where}.{key}")
            else:
                fail(f"{where}.{key}: not a field of the schema")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            declared_fields(schema.get("items", {}), item, f"{where}[{index}]")


def check_resource(document, crd_file, where):
    api_version = document.get("apiVersion", "")
    group, _, version = api_version.partition("/")
    expected_group, kind, schema = crd_schema(os.path.join(SCHEMAS, crd_file), version)
    if group != expected_group or document.get("kind") != kind:
        fail(f"{where}: {api_version} {document.get('kind')} is not {expected_group} {kind}")
    try:
        jsonschema.validate(document, schema)
    except jsonschema.ValidationError as error:
        fail(f"{where}: {error.message} at {list(error.absolute_path)}")
    declared_fields(schema, document, "$")


# IstioOperatorSpec's fields (istio/istio operator/pkg/apis/types.go at the commit SOURCES.md names).
ISTIO_OPERATOR_SPEC = {
    "profile", "installPackagePath", "hub", "tag", "namespace", "revision",
    "compatibilityVersion", "meshConfig", "components", "values", "unvalidatedValues",
}


def fail(message):
    print(f"INVALID {message}")
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    kind, path = sys.argv[1], sys.argv[2]
    with open(path) as handle:
        documents = [d for d in yaml.safe_load_all(handle) if d is not None]
    if not documents:
        fail(f"{path}: no document")
    lookup = message_classes()
    for index, document in enumerate(documents):
        where = f"{path}[{index}]"
        if kind == "mesh-config":
            parse_as(lookup, "istio.mesh.v1alpha1.MeshConfig", document, where)
        elif kind == "helm-values":
            parse_as(lookup, "istio.operator.v1alpha1.Values", document, where)
            parse_as(lookup, "istio.mesh.v1alpha1.MeshConfig", document.get("meshConfig", {}), where + ".meshConfig")
        elif kind == "istio-operator":
            if document.get("apiVersion") != "install.istio.io/v1alpha1" or document.get("kind") != "IstioOperator":
                fail(f"{where}: not an install.istio.io/v1alpha1 IstioOperator")
            spec = document.get("spec", {})
            unknown = set(spec) - ISTIO_OPERATOR_SPEC
            if unknown:
                fail(f"{where}.spec: not fields of IstioOperatorSpec: {sorted(unknown)}")
            parse_as(lookup, "istio.mesh.v1alpha1.MeshConfig", spec.get("meshConfig", {}), where + ".spec.meshConfig")
            parse_as(lookup, "istio.operator.v1alpha1.Values", spec.get("values", {}), where + ".spec.values")
        elif kind == "kyma":
            check_resource(document, "kyma/operator.kyma-project.io_istios.yaml", where)
        elif kind == "policies":
            check_resource(document, "istio-api/authorizationpolicies.crd.yaml", where)
            parse_as(lookup, "istio.security.v1beta1.AuthorizationPolicy", document.get("spec", {}), where + ".spec")
        else:
            sys.exit(f"unknown format {kind!r}")
        print(f"valid {kind} {where}")
    print(json.dumps({"documents": len(documents)}))


if __name__ == "__main__":
    main()
