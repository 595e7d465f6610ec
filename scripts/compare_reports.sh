#!/usr/bin/env bash
# Compare two report.md files of the same study byte for byte, apart from what differs
# between any two runs of the same code: the generated date, the working directory in the
# tracking URI, MLflow run ids (32 hex digits), wall times and the column padding they
# cause. Usage: scripts/compare_reports.sh BEFORE/report.md AFTER/report.md
# (table.md and table.tex carry none of these: compare them with cmp.)
set -euo pipefail
norm() {
  sed -E 's/[0-9a-f]{32}/<run-id>/g;
          s#sqlite:///[^ `]*mlflow\.db#sqlite:///<dir>/mlflow.db#g;
          s/^- \*\*generated\*\*: .*/- **generated**: <date>/;
          s/\| *([0-9.]+ s|[0-9]+ min [0-9]+ s)( \(packs of [0-9]+\))? *\|$/| <wall time> |/;
          s/ +/ /g; s/-{2,}/-/g; s/:-+:|-+:/:/g' "$1"
}
diff <(norm "$1") <(norm "$2") && echo "same apart from date, directory, run ids and wall times"
