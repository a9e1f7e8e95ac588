"""Flow control: requests wait in the EPP, fairly across tenants and by priority, while every pod
that could take them is saturated (or while their model wakes from zero pods)."""
