"""Plain helpers the tests share (fixtures live in the conftest.py files): hostile files, AWS
resources from the template, Lambda events, the browser, the demo photos, test services and
every vote on a term."""
