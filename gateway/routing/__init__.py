"""Routing rules: the files under rules/ (files), the set in force while serving (live), and the dry run
behind ``gateway rules check|test`` (dryrun). What a rule decides is pure code in ``domain.rules``."""
