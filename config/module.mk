# config/module.mk — moetrace-recipe (config/recipes/: the paper's experiment on a Slurm cluster) as a program, so
# `moetrace recipe` reaches it; `make install` adds the recipes, hf_run.py and the Slurm job scripts.
# Included by the top-level Makefile; see its "component fragments" comment.

PROGRAMS += $(BIN)/moetrace-recipe

# a link, so the runner finds hf_run.py, the Slurm scripts and notebooks/ beside its source
$(BIN)/moetrace-recipe: config/recipes/moetrace-recipe
	@mkdir -p $(@D)
	ln -sf $(abspath $<) $@

.PHONY: install-recipes
install: install-recipes
install-recipes:
	install -d $(DESTDIR)$(PREFIX)/share/moetrace/recipes
	install -m 644 config/recipes/*.json config/recipes/README.md $(DESTDIR)$(PREFIX)/share/moetrace/recipes/
	install -m 755 config/recipes/hf_run.py config/slurm-capture.sbatch config/slurm-eval.sbatch \
		config/slurm-reduce.sbatch config/slurm-stats.sbatch $(DESTDIR)$(PREFIX)/share/moetrace/recipes/
