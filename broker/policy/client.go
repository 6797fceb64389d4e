package policy

// AllowsClient reports whether some rule naming caller lets it use client
// at all (for any customer). It is for calls that only learn the customer
// org from an upstream answer: a caller with no rule for the client is
// refused before that call is made. A nil policy allows nothing.
func (p *Policy) AllowsClient(caller, client string) bool {
	if p == nil {
		return false
	}
	if p.allowAll {
		return true
	}
	for i := range p.rules {
		if rule := &p.rules[i]; rule.matches(caller) && allows(rule.Clients, client) {
			return true
		}
	}
	return false
}
