package events

import "sort"

// BuildFindReply lists the instances of name ("" for every one) and maps
// each endpoint (top-level resource) of an instance with a public URL to
// that URL. A resource served at several different URLs goes to
// Conflicts with its sorted URLs instead of URLMap. The registry answers
// finds with it, and a [RegistryWatch] builds its local answer the same
// way, so the two cannot disagree on the map.
func BuildFindReply(insts []Instance, name string) FindReply {
	out := FindReply{Instances: []Instance{}, URLMap: map[string]string{}}
	urls := map[string][]string{}
	for _, in := range insts {
		if name != "" && in.Name != name {
			continue
		}
		out.Instances = append(out.Instances, in)
		if in.PublicURL == "" {
			continue
		}
		for _, ep := range in.Endpoints {
			if !containsString(urls[ep], in.PublicURL) {
				urls[ep] = append(urls[ep], in.PublicURL)
			}
		}
	}
	for res, us := range urls {
		if len(us) == 1 {
			out.URLMap[res] = us[0]
			continue
		}
		sort.Strings(us)
		if out.Conflicts == nil {
			out.Conflicts = map[string][]string{}
		}
		out.Conflicts[res] = us
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
