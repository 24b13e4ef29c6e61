"""Built-in tasks, under the original MRQ's paths (mrq.basetasks.cleaning.*, mrq.basetasks.indexes.*)."""
