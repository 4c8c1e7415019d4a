#!/usr/bin/env bash
# Mutation testing of the core, on demand (docs/testing.md); never part of the default test run.
#
#   tests/mutation/run.sh [sender] [ledger] [metrics] [chain]     (no argument: all four)
#
# Works in a scratch copy of the working tree (MUTATION_DIR, default a new folder under /tmp), so the
# mutants never touch the checkout other people run tests in. mutmut (pyproject's dev extras) runs each
# mutant against the listed test files only, at nice 19, MUTATION_JOBS at a time (default 2). At the end
# tests/mutation/summary.py prints the per-module counts and score; `mutmut results` / `mutmut show NAME`
# (run in the scratch copy) list and show the surviving mutants.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
mutmut="$repo/.venv/bin/mutmut"
[ -x "$mutmut" ] || { echo "error: $mutmut not found: .venv/bin/pip install -e '.[dev]'" >&2; exit 2; }

declare -A paths=(
    [sender]=agent/service/sender.py
    [ledger]=storage/ledger.py
    [metrics]=inference/training/metrics.py
    [chain]=inference/engine/chain.py
)
declare -A tests=(
    [sender]="tests/agent/service/test_sender.py tests/agent/service/test_sender_bookkeeping.py tests/agent/service/test_sender_outcomes.py tests/agent/service/test_sender_tls.py"
    [ledger]="tests/storage/test_ledger.py tests/storage/test_ledger_tables.py tests/storage/test_ledger_audit.py tests/storage/test_ledger_recovery.py tests/storage/test_ledger_skipped.py tests/storage/test_retention.py tests/storage/test_ledger_delivery_claims.py tests/storage/test_ledger_moves_exact.py"
    [metrics]="tests/inference/training/test_metrics.py tests/inference/training/test_metrics_exact.py"
    [chain]="tests/inference/engine/test_chain.py tests/inference/engine/test_chain_exact.py"
)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(sender ledger metrics chain)

to_mutate=() ; test_files=()
for m in "${modules[@]}"; do
    [ -n "${paths[$m]:-}" ] || { echo "error: unknown module '$m' (sender, ledger, metrics, chain)" >&2; exit 2; }
    to_mutate+=("\"${paths[$m]}\"")
    for t in ${tests[$m]}; do test_files+=("\"$t\""); done
done

work=${MUTATION_DIR:-$(mktemp -d /tmp/spine-mutation.XXXXXX)}
echo "scratch copy: $work"
mkdir -p "$work"
(cd "$repo" && git ls-files -co --exclude-standard | grep -v '^weights/' | tar -cf - -T -) | tar -xf - -C "$work"
cd "$work"
git init -q && git add -A >/dev/null && git -c user.name=mutation -c user.email=mutation@localhost commit -qm snapshot
join() { local IFS=,; echo "$*"; }
cat >>pyproject.toml <<TOML

[tool.mutmut]
paths_to_mutate = [$(join "${to_mutate[@]}")]
tests_dir = [$(join "${test_files[@]}")]
also_copy = ["agent", "storage", "config", "dicom_io", "inference", "tests"]
# The two-process claim tests spawn fresh interpreters that would not see the mutant: left out here. So is
# the TLS config-check test: the scratch copy has no weights/, and `config check` reports that too.
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-k", "not processes",
    "--deselect", "tests/agent/service/test_sender_tls.py::test_config_check_names_the_tls_file_that_is_missing"]
TOML
nice -n 19 "$mutmut" run --max-children "${MUTATION_JOBS:-2}" || true
"$repo/.venv/bin/python" "$repo/tests/mutation/summary.py" "$work"
