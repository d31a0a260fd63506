"""Import path of the seed documents (``from mol.merge_methods.base_merge import MergeConfig``)."""
