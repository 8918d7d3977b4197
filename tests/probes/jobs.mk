# `make -j2 -s --no-print-directory -f jobs.mk GATE_AT=...`: a top make running two
# sub-makes (`two`, then `one`) that share its jobserver pipe, each building four targets
# two at a time. Target one/3 passes gate 1 (the `gate_at` probe) while one/4 finishes
# and returns its token to the jobserver pipe; the top make passes gates 2 and 3 once
# everything is built and prints a summary of every file. Recipes print nothing else, so
# the output does not depend on how the jobs interleave.
SELF := $(firstword $(MAKEFILE_LIST))

all: one two
	@for f in one/1 one/2 one/3 one/4 two/1 two/2 two/3 two/4; do \
	    printf '%s: %s\n' "$$f" "$$(cat out-$$f.txt)"; done
	@$(GATE_AT) 2
	@echo "all built"
	@$(GATE_AT) 3


one: two

one two:
	@mkdir -p out-$@
	@$(MAKE) -f $(SELF) NAME=$@ out-$@/1.txt out-$@/2.txt out-$@/3.txt out-$@/4.txt

out-$(NAME)/%.txt:
	@if [ "$(NAME)/$*" = one/3 ]; then $(GATE_AT) 1; fi
	@n=0; i=0; while [ $$i -lt 2000 ]; do n=$$(( (n * 7 + i + $*) % 100003 )); i=$$((i + 1)); done; \
	    echo "$(NAME) target $* value $$n" > $@
