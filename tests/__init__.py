"""The tests, offline on CPU, in folders that mirror the project's (hw3core/, p1/, p2/,
report/); README.md maps each promise of the project's README to the test that keeps it."""
