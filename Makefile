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
# The Debian package: what builds it (debian/control's Build-Depends) and
# checks it, and Debian's own libraries it depends on, on which the unit
# suite also runs (in $(DEBIAN_VENV), see scripts/install-debian-venv).
DEB_BUILD_APT_PACKAGES := dpkg-dev debhelper dh-python help2man pybuild-plugin-pyproject \
  python3-all python3-setuptools python3-wheel \
  python3-milter python3-dkim python3-spf python3-dnspython python3-idna python3-tldextract \
  python3-nacl python3-cryptography python3-prometheus-client
DEB_APT_PACKAGES := $(DEB_BUILD_APT_PACKAGES) lintian python3-venv adduser python3-redis \
  python3-authres python3-pytest
TEST_APT_PACKAGES := libmilter-dev postfix unbound redis-server swaks dovecot-imapd dovecot-pop3d \
  libsasl2-modules $(DEB_APT_PACKAGES)
DEBIAN_VENV := .venv-debian
# Sendmail conflicts with postfix: its packages are unpacked here, not installed
SENDMAIL_DEPS := .deps/sendmail
PYTEST_ARGS ?=

.PHONY: run test deps-run deps-test check-config bench bench-compare deb test-debian-libs dist

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
	scripts/install-debian-venv $(DEBIAN_VENV)
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

# mailwarden_VERSION_all.deb in dist/, built from a copy of this checkout
# (dpkg-buildpackage -us -uc -b); `make test` builds, checks and installs it.
deb:
	scripts/install-deps - - - $(DEB_BUILD_APT_PACKAGES)
	scripts/build-deb dist

# The unit suite on Debian 12's libraries (python3-* packages) instead of
# PyPI's: the versions the Debian package runs on.
test-debian-libs: deps-test
	$(DEBIAN_VENV)/bin/python -m pytest -m "not e2e" -p no:cacheprovider $(PYTEST_ARGS)

# The sdist and the wheel in dist/ (python -m build, from a copy of this
# checkout, with the build tools of $(VENV): no download).
dist: deps-test
	scripts/build-dist dist
