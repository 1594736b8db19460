# Sourced by the project's shell scripts: which Python runs the project, and the .venv that the
# quick-start commands (demo.sh, test.sh) make on first use.
#   hw3_python   prints the interpreter: $PYTHON if set, else .venv/bin/python beside this file
#                if it exists, else python3
#   hw3_venv     makes sure .venv holds requirements.txt (made or refreshed when it is missing,
#                or when requirements.txt changed since), unless $PYTHON is set; then prints
#                the interpreter as hw3_python does
hw3_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# .venv installs the project (requirements.txt's `-e .`); for an interpreter given as $PYTHON
# that has only the dependencies, the project's folder goes on the import path
export PYTHONPATH="$hw3_root${PYTHONPATH:+:$PYTHONPATH}"

hw3_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif [ -x "$hw3_root/.venv/bin/python" ]; then
        echo "$hw3_root/.venv/bin/python"
    else
        echo python3
    fi
}

hw3_venv() {
    if [ -z "${PYTHON:-}" ]; then
        local venv="$hw3_root/.venv" stamp want
        stamp="$hw3_root/.venv/.requirements.sha256"
        want="$(sha256sum "$hw3_root/requirements.txt" | cut -d' ' -f1)"
        if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
            echo "installing the project into $venv (first use; about two minutes)" >&2
            python3 -m venv "$venv" >&2 \
                && "$venv/bin/python" -m pip install -q -r "$hw3_root/requirements.txt" >&2 \
                && echo "$want" > "$stamp" \
                || { echo "error: could not install requirements.txt into $venv" >&2; return 1; }
        fi
    fi
    hw3_python
}
