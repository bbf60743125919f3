package doctor

// podLabel is how a pod is shown: namespace/name, or its cgroup's
// directory-style pod<uid> when unnamed.
func podLabel(p *Pod) string {
	if p == nil {
		return ""
	}
	if p.Name != "" {
		return p.Namespace + "/" + p.Name
	}
	return "pod" + p.UID
}
