# Two commands do all the set-up on a fresh Debian machine:
#   make run    installs what the milter needs and runs it in the foreground
#   make test   installs what the tests need and runs the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= conf/mailwarden.ini
# Debian packages: the milter needs libmilter-dev to build pymilter; the
# tests also run a private Postfix, a DNS server and Redis on loopback, and
# a private Sendmail (SMTP AUTH through Cyrus SASL's PLAIN plugin).
RUN_APT_PACKAGES := libmilter-dev
TEST_APT_PACKAGES := libmilter-dev postfix unbound redis-server swaks dovecot-imapd dovecot-pop3d \
	libsasl2-modules
# Sendmail conflicts with postfix: its packages are unpacked here, not installed
SENDMAIL_DEPS := .deps/sendmail
PYTEST_ARGS ?=

.PHONY: run test deps-run deps-test check-config bench bench-compare

# mailwarden will not keep root: started as root with no [milter] user
# (the case of the sample file), make run has it drop to RUN_USER.
# It listens on the [milter] socket of $(CONFIG): inet:127.0.0.1:8894 in the
# sample file, loopback TCP, which every local process can reach (and then
# claim any client or login): fine for trying it out; in production use a
# UNIX socket writable only by the MTA's group (README, "Attaching it to
# the MTA").
RUN_USER ?= nobody
run: deps-run
	@if [ "$$(id -u)" -eq 0 ] && ! grep -Eq '^(user *= *[^ ]|allow_root *= *yes)' $(CONFIG); then \
	  sed 's/^user *=.*$$/user = $(RUN_USER)/' $(CONFIG) > $(VENV)/run.ini; \
	  echo "$(BIN)/mailwarden run -c $(VENV)/run.ini --foreground-log  ($(CONFIG), user = $(RUN_USER))"; \
	  exec $(BIN)/mailwarden run -c $(VENV)/run.ini --foreground-log; \
	fi; \
	echo "$(BIN)/mailwarden run -c $(CONFIG) --foreground-log"; \
	exec $(BIN)/mailwarden run -c $(CONFIG) --foreground-log

test: deps-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

deps-run:
	scripts/install-deps $(VENV) "$(PYTHON)" "" $(RUN_APT_PACKAGES)

deps-test:
	scripts/install-deps $(VENV) "$(PYTHON)" "[test]" $(TEST_APT_PACKAGES)
	scripts/fetch-sendmail $(SENDMAIL_DEPS)

check-config: deps-run
	$(BIN)/mailwarden check-config -c $(CONFIG)

# Throughput of the private Postfix with and without mailwarden (as root);
# e.g. make bench BENCH_ARGS="--messages 2000 --tcp".  Not part of the tests.
BENCH_ARGS ?=
bench: deps-test
	$(BIN)/python bench/throughput.py $(BENCH_ARGS)

# mailwarden next to OpenDKIM+OpenDMARC and a do-nothing milter (as root)
bench-compare: deps-test
	$(BIN)/python bench/compare.py $(BENCH_ARGS)
