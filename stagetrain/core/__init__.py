"""Plain data every layer shares (torch-free): the plan, the config schema, the plug mechanism, errors, who may name code, the one gate for user files, ranges, the version."""
