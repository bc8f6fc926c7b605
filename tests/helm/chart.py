"""The Helm library (PyPI's helm-python-sdk: Helm's own Go SDK behind a C ABI) for tests/it/helm.rs.

    chart.py lint CHART [VALUES.yaml ...]
        prints Helm's lint report (strict, Kubernetes 1.33) as JSON
    chart.py render CHART OUT.yaml [VALUES.yaml ...] [--set-file KEY=PATH ...]
        renders the chart as release "meshroot" in istio-system (as `helm install` would), writes
        the manifests to OUT.yaml and prints NOTES.txt; a refused value or a failed template is
        printed to stderr with exit status 1.

Values files merge as `helm install -f a -f b` merges them: maps key by key, anything else
replaced by the later file.
"""

import json
import sys

import helm_python as helm


def merge(base, override):
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def values_of(args):
    values = {}
    files = iter(args)
    for arg in files:
        if arg == "--set-file":
            values = merge(values, helm.parse_set_file(next(files)))
        else:
            with open(arg, encoding="utf-8") as f:
                values = merge(values, helm.values_from_yaml(f.read()))
    return values


def main():
    command, chart_dir = sys.argv[1], sys.argv[2]
    if command == "lint":
        report = helm.lint(
            chart_dir, values_of(sys.argv[3:]), strict=True, kube_version="v1.33.0"
        )
        print(json.dumps(report))
        return 0
    out = sys.argv[3]
    try:
        with helm.Chart.load(chart_dir) as chart:
            rendered = chart.render(
                values=values_of(sys.argv[4:]),
                name="meshroot",
                namespace="istio-system",
                is_install=True,
            )
    except helm.HelmError as e:
        print(e, file=sys.stderr)
        return 1
    notes = ""
    with open(out, "w", encoding="utf-8") as f:
        for name, manifest in sorted(rendered.items()):
            if name.endswith("NOTES.txt"):
                notes = manifest
            elif manifest.strip():
                f.write(f"---\n# Source: {name}\n{manifest}\n")
    print(notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
