package router

// What a hitless upgrade (package upgrade, phase 2) reads from the old
// process's router and restores in the new one's: each channel's history,
// byte for byte and in order. Members are not restored here: each moved
// connection joins again in the new process, which rebuilds the
// duplicate-CID index from them.

// ForEachChannel calls fn for every channel in the table. fn runs without
// any of the router's locks held, on a copy of the table taken first, so it
// may call the channel's methods; a channel made or removed meanwhile may
// be missed or visited.
func (r *Router) ForEachChannel(fn func(*Channel)) {
	var chans []*Channel
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for _, ch := range sh.m {
			chans = append(chans, ch)
		}
		sh.mu.Unlock()
	}
	for _, ch := range chans {
		fn(ch)
	}
}

// History returns the channel's history, oldest first, appended to dst,
// each frame with a reference the caller releases.
func (c *Channel) History(dst []*Frame) []*Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hist.appendTo(dst)
}

// Restore gives the channel called name (made if needed) the history
// frames, oldest first, appended after whatever it holds, under the same
// bounds as live frames. The caller keeps its references. A channel that
// ends up with no history and no member is forgotten again.
func (r *Router) Restore(name string, frames []*Frame) error {
	for {
		ch, err := r.channelOf(name)
		if err != nil {
			return err
		}
		ch.mu.Lock()
		if ch.dead {
			ch.mu.Unlock()
			continue
		}
		for _, f := range frames {
			ch.hist.add(f)
		}
		ch.mu.Unlock()
		ch.forgetIfEmpty()
		return nil
	}
}
