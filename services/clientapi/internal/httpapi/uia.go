package httpapi

// UIAChallenge is the 401 response of user-interactive auth that asks for
// (more) authentication. With an errcode it also says why the last
// attempt failed. Handlers return it as their error; WriteError writes it.
type UIAChallenge struct {
	Flows     [][]string
	Session   string
	Completed []string
	ErrCode   string
	Message   string
}

func (c *UIAChallenge) Error() string { return "user-interactive auth required: " + c.ErrCode }

// Body is the challenge's response body.
func (c *UIAChallenge) Body() map[string]any {
	flows := make([]map[string]any, 0, len(c.Flows))
	for _, f := range c.Flows {
		flows = append(flows, map[string]any{"stages": f})
	}
	b := map[string]any{"flows": flows, "params": map[string]any{}, "session": c.Session}
	if len(c.Completed) > 0 {
		b["completed"] = c.Completed
	}
	if c.ErrCode != "" {
		b["errcode"], b["error"] = c.ErrCode, c.Message
	}
	return b
}
