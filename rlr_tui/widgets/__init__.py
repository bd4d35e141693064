"""Dashboard widgets, one concern each. They render snapshot records; none touches a tensor."""
