from django import forms

from social.models import Post


class PostForm(forms.ModelForm):
    class Meta:
        model = Post
        fields = ["body"]
        widgets = {"body": forms.Textarea(attrs={"rows": 4, "cols": 60, "autofocus": True})}
        labels = {"body": "What's new?"}


class FindAuthorForm(forms.Form):
    email = forms.EmailField(
        label="E-mail", widget=forms.EmailInput(attrs={"autofocus": True, "size": 40})
    )
