"""Forms of the domain app."""

from typing import Any

from django import forms
from django.contrib.auth.forms import PasswordChangeForm, UserCreationForm, UsernameField
from django.contrib.auth.models import User
from django.http import HttpRequest

from feedback.services.shared_cache import count_wrong_password, password_guesses_left

TOO_MANY_WRONG_PASSWORDS = (
    "Too many wrong passwords: the current password is not checked again for a while. "
    "Try again later."
)
TOO_MANY_SIGN_UPS = "Too many accounts were made from your address in the last hour. Try later."


class SignUpForm(UserCreationForm):  # type: ignore[type-arg]
    email = forms.EmailField(required=False, help_text="Optional; used for password resets.")

    class Meta:  # UserCreationForm's, with the email
        model = User
        fields = ("username", "email")
        field_classes = {"username": UsernameField}


class GuardedPasswordChangeForm(PasswordChangeForm):
    """Django's form, refusing to check the current password after too many wrong ones
    (``shared_cache.password_guesses_left``): the log-in lock-out does not see this form."""

    def __init__(self, user: User, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        super().__init__(user, *args, **kwargs)
        self.request = request

    def clean_old_password(self) -> str:
        if not password_guesses_left(self.request):
            raise forms.ValidationError(TOO_MANY_WRONG_PASSWORDS, code="too_many_attempts")
        try:
            password: str = super().clean_old_password()
        except forms.ValidationError:
            count_wrong_password(self.request)
            raise
        return password
