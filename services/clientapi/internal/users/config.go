package users

import "time"

// SupportConfig is the server's contact information for users.
type SupportConfig struct {
	Contacts []SupportContact `yaml:"contacts"`
	// SupportPage is a URL of a page with support information.
	SupportPage string `yaml:"support_page"`
}

// SupportContact is one admin contact: a role (m.role.admin,
// m.role.security or a namespaced one) and a Matrix ID or an email
// address.
type SupportContact struct {
	Role     string `yaml:"role"`
	MatrixID string `yaml:"matrix_id"`
	Email    string `yaml:"email_address"`
}

// TurnConfig gives clients credentials for a TURN server that shares a
// secret with the homeserver (coturn's use-auth-secret).
type TurnConfig struct {
	// URIs are the TURN server's URIs ("turn:turn.example.com:3478?transport=udp");
	// none turns the endpoint off ({}).
	URIs []string `yaml:"uris"`
	// SharedSecret is coturn's static-auth-secret.
	SharedSecret string `yaml:"shared_secret"`
	// UserLifetime is how long issued credentials last.
	UserLifetime time.Duration `yaml:"user_lifetime"`
}
